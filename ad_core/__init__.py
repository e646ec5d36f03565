"""IAD Workbench core library: datasets, backbones, anomaly detection methods, metrics and the runner.

This package is a pure library. It never imports the database, the workers or the dashboard; it reports
progress through plain callbacks.
"""

__version__ = "0.1.0"
