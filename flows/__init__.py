"""The Prefect flows: training (`hicra`), one stage (`hicra-stage`), evaluation (`hicra-eval`), mining (`hicra-sgs`).

Flows only compose tasks; the command line that starts them is the `cli` package above them."""
