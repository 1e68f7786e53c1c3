# Fixtures shared by several test modules (pytest only collects them from a conftest).
from s3server import s3_bucket, s3_server  # noqa: F401
