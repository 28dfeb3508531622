"""Sequential recommenders: datasets, jagged batches, embedding tables, models.

Nothing in here imports Ray or MLflow: every model and loader works in a plain
Python process (a notebook, a unit test) as well as inside a Ray Train worker.
"""
