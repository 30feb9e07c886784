"""Table catalogs (Hive Metastore, AWS Glue, none), partition registration and finalization."""
