"""damoc: choose the open LLM to fine-tune by fine-tuning cheap compressed proxies (DaMoC).

Pipeline stages, data flowing one way: config -> data -> models -> trials -> ranking -> report.
Each stage is a plain function on plain data; Ray wraps them at the edges.
"""

__version__ = "0.1.0"
