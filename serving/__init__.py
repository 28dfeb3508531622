"""Ray Serve applications that load registered models and answer HTTP."""
