from rsflow.cli.main import app

app(prog_name="rsflow")
