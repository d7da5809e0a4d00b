"""Evaluation: the scoring, statistics, lm-eval bridge and report rendering behind the
`eval` rule. Imported inside a build only (torch, matplotlib, lm_eval live here), but for
`gate`, which the rule's validation uses (standard library only)."""
