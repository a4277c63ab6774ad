# Scale-out backends for the tests: a private PostgreSQL cluster, a
# single-node Garage (S3-compatible) store and Azurite (an Azure Blob Storage
# emulator), on loopback ports, in a temporary directory. Source this file,
# call `backends_start`, and `backends_stop` when done (scripts/test does
# both). Exports what the tests read: KAI_TEST_POSTGRES, KAI_TEST_S3_BUCKET and
# the AWS_* variables, KAI_TEST_AZURE_CONTAINER and the AZURE_* variables.
# `backends_start_azurite` alone starts only Azurite.
#
# Installs what is missing: Debian's postgresql, and Garage with
# `cargo install --locked garage` (a few minutes to build, once). Azurite
# comes from scripts/install-test-deps (`npm install -g azurite@3`).

backends_dir=""
backends_postgres_bin=""

# A private account with a key made at each start (Azurite's AZURITE_ACCOUNTS),
# so no key is written down anywhere.
backends_azurite_account=kaitest
backends_azurite_key=""

backends_install() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "backends: PostgreSQL is not installed and this is not root: run apt-get install postgresql" >&2
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
    fi
    backends_postgres_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    export PATH="$PATH:$HOME/.cargo/bin"
    if ! command -v garage >/dev/null 2>&1; then
        # Only what the tests use, the S3 API with SQLite metadata, and
        # optimised less: Garage's speed is not under test, and this builds
        # in 3 min 45 s on two cores where the defaults took 6 min 35 s.
        echo "backends: building Garage (cargo install --locked garage, S3 and SQLite only; a few minutes, once)"
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --locked garage \
            --no-default-features --features bundled-libs,sqlite
    fi
    garage --version 2>/dev/null || garage --help | head -n 1
}

# A free loopback TCP port.
backends_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The temporary directory every backend keeps its data, log and pid in.
backends_make_dir() {
    [[ -n $backends_dir && -d $backends_dir ]] && return 0
    backends_dir=$(mktemp -d /tmp/kai-backends.XXXXXX)
    chmod 755 "$backends_dir"
}

backends_start() {
    backends_install || return 1
    backends_make_dir

    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
    local pg_port run_as=()
    pg_port=$(backends_free_port)
    mkdir -p "$backends_dir/postgres"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres "$backends_dir/postgres"
        run_as=(runuser -u postgres --)
    fi
    "${run_as[@]}" "$backends_postgres_bin/initdb" -D "$backends_dir/postgres/data" -A trust -U kai >/dev/null || return 1
    "${run_as[@]}" "$backends_postgres_bin/pg_ctl" -D "$backends_dir/postgres/data" -l "$backends_dir/postgres/log" -w \
        -o "-p $pg_port -k $backends_dir/postgres -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null || {
        cat "$backends_dir/postgres/log" >&2
        return 1
    }
    export KAI_TEST_POSTGRES="postgres://kai@127.0.0.1:$pg_port"
    echo "backends: PostgreSQL $("$backends_postgres_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"

    local s3_port rpc_port admin_port config node key_output
    s3_port=$(backends_free_port)
    rpc_port=$(backends_free_port)
    admin_port=$(backends_free_port)
    config="$backends_dir/garage.toml"
    cat >"$config" <<TOML
metadata_dir = "$backends_dir/garage/meta"
data_dir = "$backends_dir/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
    garage -c "$config" server >"$backends_dir/garage.log" 2>&1 &
    echo $! >"$backends_dir/garage.pid"
    local attempt
    for attempt in $(seq 1 100); do
        node=$(garage -c "$config" node id -q 2>/dev/null | cut -d@ -f1) && [[ -n $node ]] && break
        sleep 0.2
    done
    if [[ -z ${node:-} ]]; then
        echo "backends: Garage did not start; its log:" >&2
        cat "$backends_dir/garage.log" >&2
        return 1
    fi
    garage -c "$config" layout assign -z dc1 -c 1G "$node" >/dev/null
    garage -c "$config" layout apply --version 1 >/dev/null
    garage -c "$config" bucket create kai-test >/dev/null
    key_output=$(garage -c "$config" key create kai-test-key)
    garage -c "$config" bucket allow --read --write --owner kai-test --key kai-test-key >/dev/null
    export AWS_ACCESS_KEY_ID=$(awk '/Key ID/ {print $NF}' <<<"$key_output")
    export AWS_SECRET_ACCESS_KEY=$(awk '/Secret key/ {print $NF}' <<<"$key_output")
    export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port"
    export AWS_REGION=garage
    export AWS_ALLOW_HTTP=true
    export KAI_TEST_S3_BUCKET=kai-test
    if [[ -z $AWS_ACCESS_KEY_ID || -z $AWS_SECRET_ACCESS_KEY ]]; then
        echo "backends: could not read the Garage key from: $(sed 's/Secret key.*/Secret key: (hidden)/' <<<"$key_output")" >&2
        return 1
    fi
    echo "backends: Garage on 127.0.0.1:$s3_port, bucket kai-test"

    backends_start_azurite
}

# Creates container $2 on the Azure Blob endpoint $1 (path style, account
# last), signed with SharedKey; an existing container is fine. Exits 2 while
# nothing answers, 1 on any other failure.
backends_azure_create_container() {
    AZURE_ACCOUNT=$backends_azurite_account AZURE_KEY=$backends_azurite_key \
        python3 - "$1" "$2" <<'PYTHON'
import base64, email.utils, hashlib, hmac, os, sys, urllib.error, urllib.parse, urllib.request

endpoint, container = sys.argv[1], sys.argv[2]
account, key = os.environ["AZURE_ACCOUNT"], os.environ["AZURE_KEY"]
url = f"{endpoint}/{container}?restype=container"
headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
# Create Container: no body, so every standard header in the string is empty.
string_to_sign = "PUT\n" + "\n" * 11
string_to_sign += "".join(f"{name}:{value}\n" for name, value in sorted(headers.items()))
string_to_sign += f"/{account}{urllib.parse.urlsplit(url).path}\nrestype:container"
signature = hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
headers["Authorization"] = f"SharedKey {account}:{base64.b64encode(signature).decode()}"
# No data: urllib would add a Content-Type, which the signature leaves out.
request = urllib.request.Request(url, method="PUT", headers={**headers, "Content-Length": "0"})
try:
    urllib.request.urlopen(request, timeout=5)
except urllib.error.HTTPError as error:
    if error.code != 409:  # 409: the container exists.
        print(f"creating container {container}: HTTP {error.code} {error.reason}", file=sys.stderr)
        sys.exit(1)
except OSError as error:  # Refused, reset or timed out: not up yet.
    print(f"creating container {container}: {error}", file=sys.stderr)
    sys.exit(2)
PYTHON
}

# Azurite's Blob service on a loopback port, data in the temporary directory,
# with the container kai-test.
backends_start_azurite() {
    if ! command -v azurite-blob >/dev/null 2>&1; then
        echo "backends: azurite-blob is not installed: run scripts/install-test-deps (or npm install -g azurite@3)" >&2
        return 1
    fi
    backends_make_dir
    local port endpoint status=2
    port=$(backends_free_port)
    mkdir -p "$backends_dir/azurite"
    # No telemetry (there is no network), and no refusal of the API version
    # object_store speaks if it is newer than this Azurite.
    backends_azurite_key=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(64)).decode())')
    AZURITE_ACCOUNTS="$backends_azurite_account:$backends_azurite_key" \
        azurite-blob --blobHost 127.0.0.1 --blobPort "$port" --location "$backends_dir/azurite" \
        --disableTelemetry --skipApiVersionCheck --loose >"$backends_dir/azurite.log" 2>&1 &
    echo $! >"$backends_dir/azurite.pid"
    endpoint="http://127.0.0.1:$port/$backends_azurite_account"
    # Creating the container doubles as the readiness check: up to 20 seconds.
    for _ in $(seq 1 100); do
        backends_azure_create_container "$endpoint" kai-test 2>"$backends_dir/azurite.create"
        status=$?
        [[ $status -eq 2 ]] || break
        kill -0 "$(cat "$backends_dir/azurite.pid")" 2>/dev/null || break
        sleep 0.2
    done
    if [[ $status -ne 0 ]]; then
        echo "backends: Azurite did not start or refused the container: $(cat "$backends_dir/azurite.create")" >&2
        echo "backends: Azurite's log:" >&2
        cat "$backends_dir/azurite.log" >&2
        return 1
    fi
    export AZURE_STORAGE_ACCOUNT_NAME=$backends_azurite_account
    export AZURE_STORAGE_ACCOUNT_KEY=$backends_azurite_key
    export AZURE_STORAGE_ENDPOINT=$endpoint
    export AZURE_ALLOW_HTTP=true
    export KAI_TEST_AZURE_CONTAINER=kai-test
    echo "backends: Azurite $(azurite-blob --version) on 127.0.0.1:$port, container kai-test"
}

backends_stop() {
    [[ -n $backends_dir && -d $backends_dir ]] || return 0
    local service
    for service in garage azurite; do
        if [[ -f $backends_dir/$service.pid ]]; then
            kill "$(cat "$backends_dir/$service.pid")" 2>/dev/null
            wait "$(cat "$backends_dir/$service.pid")" 2>/dev/null
        fi
    done
    if [[ -d $backends_dir/postgres/data ]]; then
        local run_as=()
        [[ $(id -u) -eq 0 ]] && run_as=(runuser -u postgres --)
        "${run_as[@]}" "$backends_postgres_bin/pg_ctl" -D "$backends_dir/postgres/data" -m fast stop >/dev/null 2>&1
    fi
    rm -rf "$backends_dir"
    backends_dir=""
}
