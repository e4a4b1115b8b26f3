#!/usr/bin/env bash
# Fails (never skips) when the MariaDB or Redis the tests need is not there.
set -euo pipefail
mysql_addr=${GOCHAT_TEST_MYSQL_ADDR:-127.0.0.1:3306}
redis_addr=${GOCHAT_TEST_REDIS_ADDR:-127.0.0.1:6379}
ok=1
if ! (exec 3<>"/dev/tcp/${mysql_addr%:*}/${mysql_addr#*:}") 2>/dev/null; then
  echo "MariaDB is not reachable at $mysql_addr: the tests need it (.ci/run starts it)" >&2; ok=0
fi
if ! (exec 3<>"/dev/tcp/${redis_addr%:*}/${redis_addr#*:}") 2>/dev/null; then
  echo "Redis is not reachable at $redis_addr: the tests need it (.ci/run starts it)" >&2; ok=0
fi
[ "$ok" = 1 ]
