"""Generation backends (local Hugging Face models now) and the resumable pairs job."""
