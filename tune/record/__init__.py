"""The record of what happened: the names of keys, how a trial ended, trial folders, the Optuna
study, trials.csv and the writer lock. Files only: nothing here imports Ray or trains."""
