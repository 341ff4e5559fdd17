"""spark-submit entry point for `classeg score` (same flags).

    spark-submit --master yarn --deploy-mode cluster jobs/score.py --archive s3://BUCKET/archive --classifier s3://BUCKET/models/cls --segmenter s3://BUCKET/models/seg --output s3://BUCKET/scores

Parses the flags, loads the config, builds the SparkSession through classeg.spark.get_spark and calls the
library (see classeg.commands). Run `classeg score --help` for every flag.
"""
import sys

from classeg.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
