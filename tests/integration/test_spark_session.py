"""The one SparkSession factory, as the tests' session was built by it."""
from __future__ import annotations

from classeg.config import load_config


def test_local_driver_jvm_gets_the_configured_options(spark):
    """spark.local_java_options reaches the local driver JVM's command line (C1-only JIT by default)."""
    expected = load_config().spark.local_java_options
    assert expected == "-XX:TieredStopAtLevel=1"
    arguments = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert expected in arguments
    assert expected in spark.sparkContext.getConf().get("spark.driver.extraJavaOptions").split()
