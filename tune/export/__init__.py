"""After the search: the confirmation's files, the export's refit and `best/`.

python -m tune.export runs/mf-tune
"""
