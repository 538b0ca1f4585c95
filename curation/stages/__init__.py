"""Per-batch stages of the curation engines (each implements infra.stage.Stage)."""
