"""Reading data sets of every registered format (formats.py) into splits of posts (dataset.py)."""
