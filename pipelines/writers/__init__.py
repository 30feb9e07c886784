"""Writers: from decoded rows to durable objects in the lake (layout, encoding, storage)."""
