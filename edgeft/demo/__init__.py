"""Bundled demo: an upstream-pretrained teacher and a few-shot downstream set (tools/make_demo.py)."""
