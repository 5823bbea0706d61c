"""What a search and its refit leave for people: the test report, report.html and the pictures.

Analysis apart from drawing, as Optuna's visualization is:

    analysis.py    the trials, their parameters with real kinds (space.json, else guessed), scores,
                   learning curves and best-so-far progress, as plain data
    importance.py  fANOVA parameter importances on studies rebuilt from the trials
    evaluation.py  the test metrics with bootstrap intervals, report.json's content, `headline`
    figures.py     the page's plotly figures
    pictures.py    the refit's matplotlib PNGs
    page.py        report.html: the sections, tables and words, with static/report.css, static/sort.js

Every file goes through `runs.RunFolder`. Nothing is imported here, so that `runs` can use
evaluation.py without loading the rest.
"""
