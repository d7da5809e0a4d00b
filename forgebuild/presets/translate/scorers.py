"""Scorers of the translation benchmark, called by eval:translate with the prompts, the model's outputs
(`completions`) and the reference programs (`answer`); each returns one number per example."""
from sacrebleu.metrics import CHRF

_CHRF = CHRF()  # chrF (Popovic 2015): character 6-gram F-score, beta = 2, as sacrebleu computes it


def _lines(program):
    """A program's non-blank lines, trailing spaces removed: a final newline or a stray blank line is not an error."""
    return [line.rstrip() for line in program.splitlines() if line.strip()]


def exact_program(completions, answer, **kwargs):
    """1 when every line of the translation equals the reference's (indentation counts), else 0."""
    return [float(_lines(out) == _lines(ref)) for out, ref in zip(completions, answer)]


def chrf(completions, answer, **kwargs):
    """chrF in [0, 1]: partial credit for a translation that is close to the reference."""
    return [_CHRF.sentence_score("\n".join(_lines(out)), ["\n".join(_lines(ref))]).score / 100
            for out, ref in zip(completions, answer)]
