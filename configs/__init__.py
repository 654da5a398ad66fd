"""The papers' recipes, one config file each (`get_config(arg)`), and what they share
(recipes.py). launch.py loads a file by path; its directory, the repository root, is on
sys.path, so config and experiment files import `from configs import recipes`."""
