"""Analysis of stored results: leaderboard matrices and paper-ready exports.

Pure functions of pandas tables (pandas/numpy/scipy only): no SQL, no app layers. The tables come from
`db.results`; the dashboard and `iad export` put the two together.
"""
