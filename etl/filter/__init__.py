"""Filter stage: content scorers over the kept images, one score row per image and scorer (`filter_scores`);
thresholds belong to the dataset version (`FilterRule`), so nothing here deletes anything."""
