"""Training, data and evaluation tools for TWGTM (imports twgtm; twgtm never imports this)."""
