"""spark-submit entry point for `classeg train` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/train.py --task classify --scans s3://BUCKET/tables/lgg --output s3://BUCKET/models --num-proc 4

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg train --help` for every flag.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
