#!/bin/sh
# A worker for `deploy`: publishes the encoded file (here: computes where it would be served from).
input=$(cat)
file=$(printf '%s' "$input" | sed -n 's/.*"fileLocation":"\([^"]*\)".*/\1/p')
[ -n "$file" ] || { echo "no fileLocation in $input" >&2; exit 1; }
printf '{"cdn_url":"https://cdn.example.com/%s"}\n' "$(basename "$file")"
