"""Jobs over a table's history: verify it against Kafka (and, later, rebuild hours)."""
