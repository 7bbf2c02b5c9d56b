"""Access resolution, retention policies and retrain-on-removal jobs."""
