"""robustbench-dml: the benchmark for adversarial-training defenses of deep metric learning."""

__version__ = "0.1.0"
