"""Training: recipes, the validation search, the loss."""

from .trainer import RECIPES, TrainingRecipe, build_optimizer, recipe_for

__all__ = ["RECIPES", "TrainingRecipe", "build_optimizer", "recipe_for"]
