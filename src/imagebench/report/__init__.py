"""What a reader sees of a sweep: the leaderboard built from MLflow alone (``leaderboard``), its
HTML page (``html_report``), the sweep's parent run as the report a reviewer opens in the MLflow
UI (``parent_run``), and the leaders' models logged, exported, checked and registered
(``publish``). The top of the tree: only the command line imports it.
"""
