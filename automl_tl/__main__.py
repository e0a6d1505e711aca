from automl_tl.cli import run

run()
