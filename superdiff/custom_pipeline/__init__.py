"""The single-file pipeline that ``DiffusionPipeline.from_pretrained(custom_pipeline=...)`` loads."""
