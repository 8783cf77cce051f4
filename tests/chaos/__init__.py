"""kill -9, restarts and the worst-day faults (full disk, full store, signals, a model that never answers)."""
