#!/bin/sh
# A worker for `encode`, run by `baton worker exec --task encode -- sh encode.sh`: the task's input JSON arrives on
# stdin, the output JSON goes to stdout.
input=$(cat)
file=$(printf '%s' "$input" | sed -n 's/.*"fileLocation":"\([^"]*\)".*/\1/p')
[ -n "$file" ] || { echo "no fileLocation in $input" >&2; exit 1; }
printf '{"encodeLocation":"%s.encoded.mp4"}\n' "$file"
