"""Video evidence: a print's kept frames compiled into a timelapse, a tagged timelapse and a
poster; uploaded timelapses checked by the detector."""
