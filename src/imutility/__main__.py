from imutility.cli import run

run()
