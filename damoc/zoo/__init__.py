"""The offline candidate zoo: tiny stock-architecture LMs pretrained on bundled corpora, saved as
plain Hugging Face checkpoints, so damoc can select among real candidates with no network."""
