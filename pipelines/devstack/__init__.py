"""The local stack of real servers (Kafka, S3) that tests and the demo run against."""
