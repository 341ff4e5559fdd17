"""spark-submit entry point for `classeg evaluate` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/evaluate.py --model s3://BUCKET/models/cls --scans s3://BUCKET/tables/lgg --output s3://BUCKET/eval

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg evaluate --help` for every flag.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
