from automl_tl.cli import main

main()
