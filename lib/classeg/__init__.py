"""classeg: Class-Seg brain-MRI pipeline on Spark."""
__version__ = "0.1.0"
