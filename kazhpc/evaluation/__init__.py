"""Evaluation: the Kazakh lm-eval suite (suite, prompts, tasks/), models under test (models), shard
plan, shard runner and exact merge (sharding), the evaluate job (job), perplexity and bits per
character (perplexity), translation scores, the report and side-by-side generations."""
