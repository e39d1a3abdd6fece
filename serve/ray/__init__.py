"""Ray Serve wiring: the deployments (app), starting Ray and deploying a config (launcher). Only
this package imports Ray."""
