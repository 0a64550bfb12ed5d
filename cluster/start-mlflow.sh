#!/usr/bin/env bash
# Starts the MLflow server of a mer-tune cluster on the head node (cluster.yaml runs it).
#
# - It listens on 127.0.0.1 only: browse it from a laptop through `ray attach
#   cluster.yaml -p 5000`, which forwards the laptop's port 5000 to the head's loopback.
#   Only the search driver, on the head, writes to it.
# - MLflow's basic-auth app is on. The admin password and the store's URI come from a
#   secret the user created (never from this repository): AWS Secrets Manager secret
#   $MER_TUNE_SECRET_ID (default mer-tune/mlflow), a JSON object
#     {"admin_password": "...", "backend_store_uri": "postgresql://mlflow:...@HOST:5432/mlflow"}
#   or, off AWS, the same JSON in the file $MER_TUNE_SECRET_FILE.
# - The store lives outside the cluster, so it survives `ray down`: the database named
#   by backend_store_uri (an RDS PostgreSQL instance, say) holds runs and users; artifacts
#   go to $MER_TUNE_ARTIFACTS (an S3 prefix), proxied by the server.
# - It writes ~/.mer-tune.env (mode 600): the MLFLOW_TRACKING_* variables a search on the
#   head needs. `source ~/.mer-tune.env` before `mer-tune search`.
set -euo pipefail
umask 077
PORT=${MER_TUNE_MLFLOW_PORT:-5000}
ARTIFACTS=${MER_TUNE_ARTIFACTS:?set MER_TUNE_ARTIFACTS to an S3 prefix, e.g. s3://my-bucket/mlflow-artifacts}
STATE=${MER_TUNE_MLFLOW_STATE:-$HOME/.mer-tune-mlflow}
mkdir -p "$STATE"

python3 - "${MER_TUNE_SECRET_ID:-mer-tune/mlflow}" "${MER_TUNE_SECRET_FILE:-}" "$PORT" \
    > "$HOME/.mer-tune.env" <<'PY'
import json, secrets, shlex, sys

secret_id, secret_file, port = sys.argv[1:4]
if secret_file:
    text = open(secret_file).read()
else:
    import boto3  # the head's instance profile may read the secret

    text = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
secret = json.loads(text)
for key in ("admin_password", "backend_store_uri"):
    if not secret.get(key):
        sys.exit(f"secret {secret_file or secret_id}: missing '{key}'")
values = {
    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": secret["admin_password"],
    "MLFLOW_AUTH_ADMIN_PASSWORD": secret["admin_password"],
    "MER_TUNE_MLFLOW_STORE": secret["backend_store_uri"],
    # Signs the UI's CSRF tokens; new on every start.
    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
}
for name, value in values.items():
    print(f"export {name}={shlex.quote(value)}")
PY
# shellcheck disable=SC1091
source "$HOME/.mer-tune.env"

cat > "$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = $MER_TUNE_MLFLOW_STORE
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    nohup mlflow server --app-name basic-auth --workers "${MER_TUNE_MLFLOW_WORKERS:-2}" \
    --host 127.0.0.1 --port "$PORT" \
    --backend-store-uri "$MER_TUNE_MLFLOW_STORE" \
    --artifacts-destination "$ARTIFACTS" \
    > "$STATE/server.log" 2>&1 &
echo $! > "$STATE/server.pid"
echo "mlflow server on 127.0.0.1:$PORT (pid $(cat "$STATE/server.pid")); credentials in ~/.mer-tune.env"
