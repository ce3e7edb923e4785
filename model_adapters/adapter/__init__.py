"""The lm-eval face: `--model implicit_ssm` and `--model explicit_ssm` (lm.py), made of parts of one job each.

This package's __init__ imports nothing: the registration hook (hook.py) runs at every interpreter start-up, and the
adapters are imported lazily, by lm-eval's registry, when one of them is used.
"""
