pytest_plugins = [
    "tests.fixtures.redisserver",
    "tests.fixtures.s3server",
    "tests.fixtures.stack",
]
