"""Files in and out: filesets, FeatureSet parquet files, ROOT/parquet export, atomic writes, toy samples."""
