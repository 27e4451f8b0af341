"""Reading an experiment: the HTML report, its figures and how well pruning kept the good trials.

python -m tune.report runs/mf-tune
"""
