# shellcheck shell=bash
# shellcheck disable=SC2034 # the settings below are used by the scripts that source this
# Shared by infra/local/up, down and kafka-topics. Not executable on purpose:
# it is sourced, and only defines variables and functions.
#
# Everything that is downloaded or written at run time lives OUTSIDE the
# repository clone, so that CI can cache it and `git status` stays clean:
#   $SIGNALS_MAVEN_REPO   Maven's local repository (default ~/.m2/repository)
#   $SIGNALS_INFRA_CACHE  resolved classpaths, one folder per product+version
#                         (default ~/.cache/signals-infra)
#   state dir             configs, data, logs and pid files of running services
#                         (default $SIGNALS_INFRA_CACHE/run; --state-dir or
#                         $SIGNALS_INFRA_STATE_DIR moves it)

INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

SIGNALS_INFRA_CACHE=${SIGNALS_INFRA_CACHE:-$HOME/.cache/signals-infra}
SIGNALS_MAVEN_REPO=${SIGNALS_MAVEN_REPO:-$HOME/.m2/repository}
STATE_DIR=${SIGNALS_INFRA_STATE_DIR:-$SIGNALS_INFRA_CACHE/run}

KAFKA_VERSION=${SIGNALS_INFRA_KAFKA_VERSION:-4.1.2}
CASSANDRA_VERSION=${SIGNALS_INFRA_CASSANDRA_VERSION:-5.0.9}
# Pinned so that a cached Maven repository is enough to run offline.
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# Loopback ports, deliberately not the products' defaults (9092/9093, 9042/7000,
# 6379) so that a developer's own Kafka, Cassandra/Scylla or Redis can keep running.
KAFKA_PORT=${SIGNALS_INFRA_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${SIGNALS_INFRA_KAFKA_CONTROLLER_PORT:-19093}
CQL_PORT=${SIGNALS_INFRA_CQL_PORT:-19042}
CASSANDRA_STORAGE_PORT=${SIGNALS_INFRA_CASSANDRA_STORAGE_PORT:-17000}
REDIS_PORT=${SIGNALS_INFRA_REDIS_PORT:-16379}

KAFKA_HEAP=${SIGNALS_INFRA_KAFKA_HEAP:-512m}
CASSANDRA_HEAP=${SIGNALS_INFRA_CASSANDRA_HEAP:-1g}

# Seconds to wait for a service to answer after it was launched.
START_TIMEOUT=${SIGNALS_INFRA_START_TIMEOUT:-180}

ALL_SERVICES=(kafka cassandra redis)

# Microseconds since the epoch, and tenths of seconds elapsed since such a time.
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
since() {
  local d=$((($(now_us) - $1) / 100000))
  echo "$((d / 10)).$((d % 10))"
}

log() { printf 'infra: %s\n' "$*" >&2; }
die() { printf 'infra: error: %s\n' "$*" >&2; exit 1; }

# Accepts the service names people are likely to type.
canonical_service() {
  case $1 in
    kafka) echo kafka ;;
    cassandra | cql | scylla) echo cassandra ;;
    redis) echo redis ;;
    *) die "unknown service '$1' (expected: kafka, cassandra, redis)" ;;
  esac
}

kafka_lib() { echo "$SIGNALS_INFRA_CACHE/kafka-$KAFKA_VERSION/lib"; }
cassandra_lib() { echo "$SIGNALS_INFRA_CACHE/cassandra-$CASSANDRA_VERSION/lib"; }

svc_dir() { echo "$STATE_DIR/$1"; }
pid_file() { echo "$STATE_DIR/$1/pid"; }

# The file to point people at when a service misbehaves.
log_file() {
  case $1 in
    kafka) echo "$STATE_DIR/kafka/logs/server.log" ;;
    cassandra) echo "$STATE_DIR/cassandra/logs/system.log" ;;
    redis) echo "$STATE_DIR/redis/redis.log" ;;
  esac
}
# stdout/stderr of the process itself (JVM crashes, uncaught errors).
out_file() { echo "$STATE_DIR/$1/$1.out"; }

# A pid recorded in our pid file is only ours if the process still carries our
# marker: pids get reused after a reboot or a crash.
svc_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  case $1 in
    # redis-server rewrites its command line (its process title) as it
    # starts, and read at that moment it can hold nothing: a CI run once took
    # a starting Redis for one that had exited, and left it running. Once
    # exec'd, the executable says what it is; before, the launcher's command
    # line does.
    redis)
      [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$(command -v redis-server)")" ]] ||
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'redis-server' || return 1
      ;;
    *) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-Dsignals.infra.service=$1 " || return 1 ;;
  esac
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Runs apt-get install, refreshing the package lists first when they are
# missing or stale (a 404 from an old list). Root, or sudo without a password.
apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    log "apt-get update"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
  fi
  log "apt-get install -y $*"
  if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >&2; then
    log "apt-get install failed, refreshing package lists and retrying"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
  fi
}

java_major() {
  "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\)[."].*/\1/p'
}

# Kafka 4.x needs Java >= 17 and Cassandra 5.0 supports only 11 and 17, so
# both run on 17, whatever the default `java` is.
find_java17() {
  local j
  local candidates=()
  [[ -n ${SIGNALS_INFRA_JAVA:-} ]] && candidates+=("$SIGNALS_INFRA_JAVA")
  [[ -n ${JAVA_HOME:-} ]] && candidates+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null && candidates+=("$(command -v java)")
  for j in /usr/lib/jvm/java-17-*/bin/java /usr/lib/jvm/*-17-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    [[ -x $j ]] && candidates+=("$j")
  done
  for j in "${candidates[@]}"; do
    if [[ -x $j && $(java_major "$j") == 17 ]]; then
      echo "$j"
      return 0
    fi
  done
  return 1
}

ensure_java() {
  [[ -n ${JAVA:-} ]] && return 0
  if ! JAVA=$(find_java17); then
    log "no Java 17 found (set SIGNALS_INFRA_JAVA to one); installing openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless
    JAVA=$(find_java17) || die "still no Java 17 after installing openjdk-17-jre-headless"
  fi
}

# Resolves the runtime classpath of infra/local/maven/$1/pom.xml (version $2)
# into $SIGNALS_INFRA_CACHE/$1-$2/lib, once. The stamp holds the pom's hash, so
# editing the pom refetches. Maven itself caches the jars in SIGNALS_MAVEN_REPO.
fetch_classpath() {
  local name=$1 version=$2
  local work="$SIGNALS_INFRA_CACHE/$name-$version"
  local pom="$INFRA_DIR/maven/$name/pom.xml"
  local want
  want="$(sha256sum "$pom" | cut -d' ' -f1) $DEPENDENCY_PLUGIN"
  if [[ -f $work/.complete && $(<"$work/.complete") == "$want" ]]; then
    return 0
  fi
  mkdir -p "$work"
  # Two concurrent `up`s must not both write the same folder.
  (
    flock 8
    if [[ -f $work/.complete && $(<"$work/.complete") == "$want" ]]; then
      exit 0
    fi
    command -v mvn >/dev/null || apt_install maven
    log "fetching $name $version from Maven Central into $work/lib (Maven repository: $SIGNALS_MAVEN_REPO)"
    local started
    started=$(now_us)
    rm -rf "$work/lib.tmp" "$work/.complete"
    # A copy of the pom, so that Maven never writes into the repository clone.
    cp "$pom" "$work/pom.xml"
    # mvn prints errors on stdout: they go to stderr, our stdout is for exports
    # (and Debian's Maven 3.8 emits colour resets even in batch mode).
    (cd "$work" && mvn -B -q --no-transfer-progress -Dstyle.color=never \
      -Dmaven.repo.local="$SIGNALS_MAVEN_REPO" \
      "-D$name.version=$version" \
      "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$work/lib.tmp") 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g' >&2 ||
      die "could not resolve $name $version with Maven (see the messages above)"
    rm -rf "${work:?}/lib"
    mv "$work/lib.tmp" "$work/lib"
    printf '%s\n' "$want" >"$work/.complete"
    log "fetched $name $version in $(since "$started") s: $(du -sh "$work/lib" | cut -f1) in $(find "$work/lib" -name '*.jar' | wc -l) jars"
  ) 8>"$work/.lock"
}

# Options for short-lived Kafka tool JVMs: small heap, fast start-up.
kafka_tool_jvm_opts() {
  printf '%s\n' -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$INFRA_DIR/config/kafka-tools-log4j2.properties"
}

# Launches "$@" detached from our terminal and our stdout (so that
# `eval "$(infra/local/up)"` does not wait for it), records its pid and which
# ports it was given. The inner bash writes its own pid and then execs the
# command, so the pid file names the service process itself, whether or not
# setsid had to fork. Our lock descriptors (8, 9) are not inherited.
launch() {
  local svc=$1 ports=$2
  shift 2
  local out pidf
  out=$(out_file "$svc")
  pidf=$(pid_file "$svc")
  [[ -f $out ]] && mv -f "$out" "$out.prev"
  printf '%s\n' "$ports" >"$(svc_dir "$svc")/ports"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' launch "$pidf" "$@" \
    </dev/null >"$out" 2>&1 8>&- 9>&- &
  for _ in $(seq 50); do
    [[ -s $pidf ]] && break
    sleep 0.1
  done
  [[ -s $pidf ]] || die "$svc: could not record its pid in $pidf"
}

# SIGTERM, then SIGKILL after $2 seconds. Succeeds if the service is not running.
stop_service() {
  local svc=$1 grace=$2 pid
  if ! pid=$(svc_pid "$svc"); then
    rm -f "$(pid_file "$svc")"
    log "$svc: not running"
    return 0
  fi
  log "$svc: stopping pid $pid (SIGTERM, SIGKILL after ${grace} s)"
  local started=$SECONDS
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && ((SECONDS - started < grace)); do
    sleep 0.2
  done
  if alive "$pid"; then
    log "$svc: still running after ${grace} s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid" && ((SECONDS - started < grace + 10)); do
      sleep 0.2
    done
    alive "$pid" && die "$svc: pid $pid survived SIGKILL"
  fi
  rm -f "$(pid_file "$svc")"
  log "$svc: stopped in $((SECONDS - started)) s"
}

# A zombie (state Z) is dead for our purposes: it only waits for its parent.
alive() {
  [[ -r /proc/$1/stat ]] || return 1
  local stat
  stat=$(<"/proc/$1/stat") || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

stop_grace() {
  if [[ -n ${SIGNALS_INFRA_STOP_TIMEOUT:-} ]]; then
    echo "$SIGNALS_INFRA_STOP_TIMEOUT"
    return
  fi
  case $1 in
    kafka) echo 60 ;;
    cassandra) echo 90 ;;
    redis) echo 30 ;;
  esac
}

# Parses the options common to up and down; leaves the service names in SERVICES.
parse_args() {
  SERVICES=()
  local s
  while (($#)); do
    case $1 in
      --state-dir) [[ $# -ge 2 ]] || die "--state-dir needs a value"; STATE_DIR=$2; shift 2 ;;
      --state-dir=*) STATE_DIR=${1#*=}; shift ;;
      -h | --help) usage; exit 0 ;;
      all) SERVICES+=("${ALL_SERVICES[@]}"); shift ;;
      -*) die "unknown option $1 (see --help)" ;;
      *) s=$(canonical_service "$1"); SERVICES+=("$s"); shift ;;
    esac
  done
  ((${#SERVICES[@]})) || SERVICES=("${ALL_SERVICES[@]}")
  # De-duplicated, in the canonical order.
  local ordered=()
  for s in "${ALL_SERVICES[@]}"; do
    [[ " ${SERVICES[*]} " == *" $s "* ]] && ordered+=("$s")
  done
  SERVICES=("${ordered[@]}")
  STATE_DIR=$(realpath -m "$STATE_DIR")
}

# Serialises up/down on one state dir (fd 9; never inherited by services).
lock_state() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 900 9 || die "another infra/local/up or down holds $STATE_DIR/.lock"
}
