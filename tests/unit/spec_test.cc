// Unit tests for spec/image_spec: parsing, validation errors, defaults, paths, canonical form.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "spec/image_spec.h"
#include "spec/tag.h"

namespace fs = std::filesystem;
using kiln::spec::BaseImage;
using kiln::spec::Compression;
using kiln::spec::CopyMode;
using kiln::spec::ImageSpec;
using kiln::spec::parse_spec;
using kiln::spec::SpecError;
using json = nlohmann::json;

namespace {

ImageSpec parse(const std::string& text, const fs::path& base = "/base") {
  return parse_spec(text, base, "spec.json");
}

/// The SpecError message for `text`, or "no error".
std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const SpecError& e) {
    return e.what();
  }
  return "no error";
}

/// The SpecError's field() for `text`, or "no error".
std::string field_of(const std::string& text) {
  try {
    parse(text);
  } catch (const SpecError& e) {
    return e.field();
  }
  return "no error";
}

/// A fresh temporary directory, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kiln-spec-test-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

void write_file(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << content;
}

}  // namespace

// ---- JSON syntax and top level -----------------------------------------------------------------

TEST_CASE("spec: JSON syntax errors give origin, line and column") {
  CHECK(error_of("{\n  \"name\": \"x\",\n  \"env\": tru\n}") ==
        "spec.json:3:13: JSON syntax error while parsing value: invalid literal; last read: "
        "'\"env\": tru<U+000A>'");
  CHECK(error_of(R"({"a":1,})") ==
        "spec.json:1:8: JSON syntax error while parsing object key: unexpected '}'; expected "
        "string literal");
  CHECK(error_of("{\n\n") ==
        "spec.json:3:1: JSON syntax error while parsing object key: unexpected end of input; "
        "expected string literal");
  CHECK(error_of("") ==
        "spec.json:1:1: JSON syntax error while parsing value: unexpected end of input; "
        "expected '[', '{', or a literal");
  CHECK(field_of("{") == "");
}

TEST_CASE("spec: the top level must be an object") {
  CHECK(error_of("[1]") == "spec.json: the spec must be a JSON object, not a list");
  CHECK(error_of("\"x\"") == "spec.json: the spec must be a JSON object, not a string");
  CHECK(error_of("null") == "spec.json: the spec must be a JSON object, not null");
}

// ---- Unknown fields -----------------------------------------------------------------------------

TEST_CASE("spec: unknown fields get a did-you-mean suggestion when one is close") {
  CHECK(error_of(R"({"nmae": "x"})") == "spec.json: unknown field 'nmae'; did you mean 'name'?");
  CHECK(error_of(R"({"apt-packages": []})") ==
        "spec.json: unknown field 'apt-packages'; did you mean 'apt_packages'?");
  CHECK(error_of(R"({"Name": "x"})") == "spec.json: unknown field 'Name'; did you mean 'name'?");
  CHECK(error_of(R"({"sourceroot": "."})") ==
        "spec.json: unknown field 'sourceroot'; did you mean 'source_root'?");
  CHECK(field_of(R"({"nmae": "x"})") == "nmae");
  // At the limit: distance <= max(2, length / 3).
  CHECK(error_of(R"({"wrkdr": "/"})") ==
        "spec.json: unknown field 'wrkdr'; did you mean 'workdir'?");
  // Two transpositions count as 2 (plain Levenshtein would say 4).
  CHECK(error_of(R"({"wrokdri": "/"})") ==
        "spec.json: unknown field 'wrokdri'; did you mean 'workdir'?");
  CHECK(error_of(R"({"xyzpackages": []})") ==
        "spec.json: unknown field 'xyzpackages'; did you mean 'packages'?");
}

TEST_CASE("spec: unknown fields without a close match get no suggestion") {
  CHECK(error_of(R"({"zzzzzzzz": 1})") == "spec.json: unknown field 'zzzzzzzz'");
  CHECK(error_of(R"({"dockerfile": "x"})") == "spec.json: unknown field 'dockerfile'");
}

TEST_CASE("spec: unknown fields in a nested base spec are named with their path") {
  CHECK(error_of(R"({"base_image": {"nmae": "x"}})") ==
        "spec.json: unknown field 'base_image.nmae'; did you mean 'name'?");
  CHECK(field_of(R"({"base_image": {"nmae": "x"}})") == "base_image.nmae");
}

TEST_CASE("spec: unknown fields are reported before type errors") {
  CHECK(error_of(R"({"env": 1, "zzzzzzzz": 1})") == "spec.json: unknown field 'zzzzzzzz'");
}

// ---- Types --------------------------------------------------------------------------------------

TEST_CASE("spec: string fields reject other types") {
  CHECK(error_of(R"({"name": 1})") == "spec.json: field 'name' must be a string, not a number");
  CHECK(error_of(R"({"user": true})") == "spec.json: field 'user' must be a string, not a boolean");
  CHECK(error_of(R"({"tag_format": ["a"]})") ==
        "spec.json: field 'tag_format' must be a string, not a list");
  CHECK(error_of(R"({"source_root": {}})") ==
        "spec.json: field 'source_root' must be a string, not an object");
  CHECK(field_of(R"({"name": 1})") == "name");
}

TEST_CASE("spec: list fields reject other types and non-string items") {
  CHECK(error_of(R"({"packages": "numpy"})") ==
        "spec.json: field 'packages' must be a list of strings, not a string");
  CHECK(error_of(R"({"apt_packages": ["git", 3]})") ==
        "spec.json: field 'apt_packages' must be a list of strings (item 1 is a number)");
  CHECK(error_of(R"({"commands": {}})") ==
        "spec.json: field 'commands' must be a list of strings, not an object");
}

TEST_CASE("spec: string-or-list fields reject other types") {
  CHECK(error_of(R"({"copy": 3})") ==
        "spec.json: field 'copy' must be a string or a list of strings, not a number");
  CHECK(error_of(R"({"pip_extra_args": 1})") ==
        "spec.json: field 'pip_extra_args' must be a string or a list of strings, not a number");
}

TEST_CASE("spec: entrypoint and pip_extra_index_url are lists, as in flytekit") {
  // flytekit: "entrypoint must be a list of strings or None" (a string, "" included).
  CHECK(error_of(R"({"entrypoint": "python"})") ==
        "spec.json: field 'entrypoint' must be a list of strings, not a string");
  CHECK(error_of(R"({"entrypoint": ""})") ==
        "spec.json: field 'entrypoint' must be a list of strings, not a string");
  CHECK(field_of(R"({"entrypoint": "python"})") == "entrypoint");
  CHECK(error_of(R"({"entrypoint": {"a": 1}})") ==
        "spec.json: field 'entrypoint' must be a list of strings, not an object");
  CHECK(error_of(R"({"entrypoint": ["a", null]})") ==
        "spec.json: field 'entrypoint' must be a list of strings (item 1 is null)");
  CHECK(error_of(R"({"pip_extra_index_url": "https://example.org/simple"})") ==
        "spec.json: field 'pip_extra_index_url' must be a list of strings, not a string");
  CHECK(field_of(R"({"pip_extra_index_url": ""})") == "pip_extra_index_url");
  CHECK(error_of(R"({"pip_extra_index_url": false})") ==
        "spec.json: field 'pip_extra_index_url' must be a list of strings, not a boolean");
  CHECK(error_of(R"({"base_image": {"entrypoint": "sh"}})") ==
        "spec.json: field 'base_image.entrypoint' must be a list of strings, not a string");
  // [] and null are accepted, as flytekit accepts them.
  CHECK(parse(R"({"pip_extra_index_url": []})").pip_extra_index_url.empty());
  CHECK(parse(R"({"pip_extra_index_url": null})").pip_extra_index_url.empty());
  CHECK(parse(R"({"pip_extra_index_url": ["https://a", "https://b"]})").pip_extra_index_url ==
        std::vector<std::string>{"https://a", "https://b"});
}

TEST_CASE("spec: map fields must map strings to strings") {
  CHECK(error_of(R"({"env": ["A=1"]})") ==
        "spec.json: field 'env' must be an object mapping strings to strings, not a list");
  CHECK(error_of(R"({"env": {"PORT": 8080}})") ==
        "spec.json: field 'env' must be an object mapping strings to strings (the value of "
        "'PORT' is a number)");
  CHECK(error_of(R"({"labels": {"a": null}})") ==
        "spec.json: field 'labels' must be an object mapping strings to strings (the value of "
        "'a' is null)");
  CHECK(error_of(R"({"annotations": "x"})") ==
        "spec.json: field 'annotations' must be an object mapping strings to strings, not a "
        "string");
  CHECK(error_of(R"({"env": {"A=B": "1"}})") ==
        "spec.json: field 'env' has a variable name containing '=': 'A=B'");
  CHECK(error_of(R"({"env": {"": "1"}})") == "spec.json: field 'env' has an empty key");
}

TEST_CASE("spec: base_image must be a string or an object") {
  CHECK(error_of(R"({"base_image": ["scratch"]})") ==
        "spec.json: field 'base_image' must be a string or an object (a nested spec), not a list");
  CHECK(error_of(R"({"base_image": {"env": 1}})") ==
        "spec.json: field 'base_image.env' must be an object mapping strings to strings, not a "
        "number");
}

TEST_CASE("spec: pip_secret_mounts must be [source, target] pairs") {
  const std::string msg =
      "spec.json: field 'pip_secret_mounts' must be a list of [source, target] pairs of strings";
  CHECK(error_of(R"({"pip_secret_mounts": "a"})") == msg + ", not a string");
  CHECK(error_of(R"({"pip_secret_mounts": [["a"]]})") == msg + " (found [\"a\"])");
  CHECK(error_of(R"({"pip_secret_mounts": [["a", 1]]})") == msg + " (found [\"a\",1])");
}

TEST_CASE("spec: integer fields reject non-integers and out-of-range values") {
  CHECK(error_of(R"({"large_file_threshold": 1.5})") ==
        "spec.json: field 'large_file_threshold' must be an integer, not a number");
  CHECK(error_of(R"({"large_file_threshold": "1"})") ==
        "spec.json: field 'large_file_threshold' must be an integer, not a string");
  CHECK(error_of(R"({"large_file_threshold": 0})") ==
        "spec.json: field 'large_file_threshold' must be at least 1, not 0");
  CHECK(error_of(R"({"source_date_epoch": -1})") ==
        "spec.json: field 'source_date_epoch' must be at least 0, not -1");
  CHECK(error_of(R"({"source_date_epoch": true})") ==
        "spec.json: field 'source_date_epoch' must be an integer, not a boolean");
  CHECK(error_of(R"({"source_date_epoch": 18446744073709551615})") ==
        "spec.json: field 'source_date_epoch' is too large");
}

TEST_CASE("spec: a NUL character in any string is refused, and shown escaped", "[hostile]") {
  // The OS would cut ".\0x" at the NUL: source_root would silently be the spec's own directory.
  CHECK(error_of(R"({"source_root": ".\u0000x"})") ==
        "spec.json: field 'source_root' has a NUL character (\\u0000) in '.\\u0000x'");
  CHECK(field_of(R"({"source_root": ".\u0000x"})") == "source_root");
  CHECK(field_of(R"({"copy": ["a", "b\u0000"]})") == "copy");
  CHECK(field_of(R"({"env": {"A\u0000B": "1"}})") == "env");
  CHECK(field_of(R"({"env": {"A": "1\u0000"}})") == "env");
  CHECK(field_of(R"({"entrypoint": ["python", "-c\u0000"]})") == "entrypoint");
  CHECK(field_of(R"({"name": "\u0000"})") == "name");
  CHECK(field_of(R"({"builder_options": {"a": [{"b": "\u0000"}]}})") == "builder_options");
  CHECK(field_of(R"({"builder_config": {"k\u0000": 1}})") == "builder_config");
  CHECK(field_of(R"({"base_image": {"base_image": {"source_root": "x\u0000"}}})") ==
        "base_image.base_image.source_root");
  CHECK(field_of(R"({"base_image": "python\u0000:3"})") == "base_image");
  CHECK(field_of(R"({"context_dir": "\u0000"})") == "context_dir");
  // A key with a NUL (known or not) is named escaped.
  CHECK(error_of(R"({"source_root\u0000": "."})") ==
        "spec.json: field 'source_root\\u0000' has a NUL character (\\u0000) in "
        "'source_root\\u0000'");
  // No message carries a raw NUL.
  for (const char* text : {R"({"labels": {"\u0000": "v"}})", R"({"user": "\u0000"})",
                           R"({"x\u0000y": 1})", R"({"pip_extra_args": "--a \u0000"})"}) {
    std::string e = error_of(text);
    CHECK(e != "no error");
    CHECK(e.find('\0') == std::string::npos);
  }
  // Other control characters in an unknown key are shown escaped too.
  CHECK(error_of(R"({"zz\u0007": 1})") == "spec.json: unknown field 'zz\\u0007'");
}

TEST_CASE("spec: duplicate keys are refused, naming the field") {
  CHECK(error_of(R"({"name": "x", "name": "y"})") == "spec.json: field 'name' is given twice");
  CHECK(field_of(R"({"name": "x", "name": "y"})") == "name");
  CHECK(error_of(R"({"env": {"A": "1", "B": "2", "A": "3"}})") ==
        "spec.json: field 'env' has the key 'A' twice");
  CHECK(error_of(R"({"base_image": {"base_image": {"user": "a", "user": "b"}}})") ==
        "spec.json: field 'base_image.base_image.user' is given twice");
  CHECK(error_of(R"({"base_image": {"labels": {"l": "1", "l": "1"}}})") ==
        "spec.json: field 'base_image.labels' has the key 'l' twice");
  CHECK(field_of(R"({"builder_options": {"a": [{"k": 1, "k": 2}]}})") == "builder_options");
  // The same key in different objects is fine.
  CHECK(parse(R"({"env": {"A": "1"}, "labels": {"A": "1"}, "base_image": {"env": {"A": "2"}}})").env.size() == 1);
  CHECK(parse(R"({"builder_options": {"a": {"x": 1}, "b": [{"x": 1}, {"x": 2}]}})").builder_options.size() == 2);
}

TEST_CASE("spec: builder_options must be an object, as in flytekit") {
  // flytekit: "builder_options must be a dictionary or None".
  CHECK(error_of(R"({"builder_options": "x"})") ==
        "spec.json: field 'builder_options' must be an object, not a string");
  CHECK(error_of(R"({"builder_options": [1]})") ==
        "spec.json: field 'builder_options' must be an object, not a list");
  CHECK(field_of(R"({"base_image": {"builder_options": 1}})") == "base_image.builder_options");
  CHECK(parse(R"({"builder_options": {}})").builder_options == json::object());
  CHECK(parse(R"({"builder_options": null})").builder_options.is_null());
}

TEST_CASE("spec: builder_options and builder_config are two fields, both accepted") {
  ImageSpec a = parse(R"({"builder_options": {"x": [1, 2]}})");
  CHECK(a.builder_options == json{{"x", {1, 2}}});
  CHECK(a.builder_config.is_null());
  ImageSpec b = parse(R"({"builder_config": "anything"})");  // flytekit does not check its type
  CHECK(b.builder_config == json("anything"));
  CHECK(b.builder_options.is_null());
  // flytekit: builder_config holds the builder images, builder_options a builder's options.
  ImageSpec both = parse(R"({"builder_options": {"cache": true}, "builder_config": {"uv_image": "u"}})");
  CHECK(both.builder_options == json{{"cache", true}});
  CHECK(both.builder_config == json{{"uv_image", "u"}});
  CHECK(parse(R"({"builder_options": null, "builder_config": 1})").builder_config == json(1));
  // Neither shapes the image: the canonical spec (and so the tag) is the same with or without.
  CHECK(both.canonical() == parse("{}").canonical());
  CHECK(parse(R"({"base_image": {"builder_options": {}, "builder_config": {"a": 1}}})").canonical() ==
        parse(R"({"base_image": {}})").canonical());
}

// ---- Not supported yet --------------------------------------------------------------------------

TEST_CASE("spec: conda, CUDA and runtime packages are not supported yet") {
  const std::pair<const char*, const char*> cases[] = {
      {"conda_packages", R"(["numpy"])"},
      {"conda_channels", R"(["conda-forge"])"},
      {"cuda", R"("12.1")"},
      {"cudnn", R"("8")"},
      {"runtime_packages", R"(["flytekit"])"},
  };
  for (const auto& [field, value] : cases) {
    INFO(field);
    std::string text = std::string("{\"") + field + "\": " + value + "}";
    CHECK_THAT(error_of(text), Catch::StartsWith(std::string("spec.json: field '") + field + "' is not supported yet: "));
    CHECK(field_of(text) == field);
  }
}

TEST_CASE("spec: RUN-step fields are accepted and checked") {
  ImageSpec s = parse(R"({"apt_packages": ["git", "libc6:amd64", "curl=7.88.1-10", "gcc/bookworm-backports"],
    "packages": ["numpy>=1.26", "pandas ; python_version >= '3.9'"], "python_version": "3.11",
    "requirements": "requirements.txt", "commands": ["echo hi"], "pip_index": "https://pypi.example/simple",
    "pip_extra_index_url": ["https://x.example/simple"], "pip_secret_mounts": [["netrc", "/root/.netrc"]],
    "pip_extra_args": "--pre --no-cache-dir", "python_exec": "/usr/bin/python3"})");
  CHECK(s.apt_packages.size() == 4);
  CHECK(s.pip_extra_args == std::vector<std::string>{"--pre", "--no-cache-dir"});
  CHECK(field_of(R"({"apt_packages": ["git; rm -rf /"]})") == "apt_packages");
  CHECK(field_of(R"({"apt_packages": ["--allow-unauthenticated"]})") == "apt_packages");
  CHECK_THAT(error_of(R"({"packages": ["--pre"]})"), Catch::Contains("pip_extra_args"));
  CHECK(field_of(R"({"packages": [" "]})") == "packages");
  CHECK(field_of(R"({"python_version": "three"})") == "python_version");
  CHECK(field_of(R"({"python_exec": "python3; id"})") == "python_exec");
  CHECK_THAT(error_of(R"({"requirements": "sub/uv.lock"})"), Catch::Contains("uv export"));
  CHECK(field_of(R"({"pip_secret_mounts": [["netrc", "relative/target"]]})") == "pip_secret_mounts");
  CHECK(field_of(R"({"commands": ["  "]})") == "commands");
  CHECK(field_of(R"({"base_image": {"apt_packages": ["Bad Name"]}})") == "base_image.apt_packages");
}

TEST_CASE("spec: empty values of RUN-step and unsupported fields are accepted") {
  ImageSpec s = parse(R"({
    "python_version": "", "packages": [], "conda_packages": null, "conda_channels": [],
    "requirements": "", "apt_packages": [], "cuda": null, "cudnn": "", "commands": [],
    "pip_index": "", "pip_extra_index_url": [], "pip_secret_mounts": [], "pip_extra_args": "  ",
    "python_exec": "", "runtime_packages": []})");
  CHECK_FALSE(s.python_version.has_value());
  CHECK(s.packages.empty());
  CHECK(s.pip_extra_index_url.empty());
  CHECK(s.pip_extra_args.empty());
  CHECK_FALSE(s.python_exec.has_value());
}

TEST_CASE("spec: unsupported fields are reported after type errors") {
  CHECK(error_of(R"({"cuda": "12", "env": 1})") ==
        "spec.json: field 'env' must be an object mapping strings to strings, not a number");
  CHECK(error_of(R"({"packages": [1]})") ==
        "spec.json: field 'packages' must be a list of strings (item 0 is a number)");
  CHECK(error_of(R"({"base_image": {"cuda": "12"}, "zzzzzzzz": 1})") == "spec.json: unknown field 'zzzzzzzz'");
  CHECK(error_of(R"({"base_image": {"cuda": "12"}, "workdir": "rel"})") ==
        "spec.json: field 'workdir' must be an absolute path in the image, not 'rel'");
}

TEST_CASE("spec: unsupported fields in a nested base spec are named with their path") {
  CHECK_THAT(error_of(R"({"base_image": {"conda_packages": ["numpy"]}})"),
             Catch::StartsWith("spec.json: field 'base_image.conda_packages' is not supported yet: "));
  CHECK(field_of(R"({"base_image": {"conda_packages": ["numpy"]}})") == "base_image.conda_packages");
}

TEST_CASE("spec: a registry base image is a registry reference") {
  auto s = parse(R"({"base_image": "ghcr.io/org/img:v1"})");
  CHECK(s.base_image.kind == kiln::spec::BaseImage::Kind::Registry);
  CHECK(s.base_image.ref == "ghcr.io/org/img:v1");
  CHECK(parse(R"({"base_image": {"base_image": "debian"}})").base_image.spec->base_image.kind ==
        kiln::spec::BaseImage::Kind::Registry);
}

// ---- Value checks -------------------------------------------------------------------------------

TEST_CASE("spec: name is lowercased and must be a repository name") {
  CHECK(parse(R"({"name": "My-Image_v2"})").name == "my-image_v2");
  CHECK(parse(R"({"name": "org/sub.app"})").name == "org/sub.app");
  const std::string rule =
      "must be a valid repository name (lowercase letters and digits, joined by '.', '_' or "
      "'-', components separated by '/'), not ";
  CHECK(error_of(R"({"name": "my image"})") == "spec.json: field 'name' " + rule + "'my image'");
  CHECK(error_of(R"({"name": "-x"})") == "spec.json: field 'name' " + rule + "'-x'");
  CHECK(error_of(R"({"name": "a//b"})") == "spec.json: field 'name' " + rule + "'a//b'");
  CHECK(error_of(R"({"name": ""})") == "spec.json: field 'name' " + rule + "''");
}

TEST_CASE("spec: [registry/]name is at most 255 characters, as a Docker reference allows") {
  const std::string n255(255, 'a'), n256(256, 'a');
  CHECK(parse(R"({"name": ")" + n255 + "\"}").name == n255);
  CHECK(error_of(R"({"name": ")" + n256 + "\"}") ==
        "spec.json: field 'name' makes a repository name of 256 characters: an image reference "
        "allows at most 255");
  const std::string n244(244, 'b');  // "localhost:5000/" is 15 characters: 259
  CHECK(error_of(R"({"registry": "localhost:5000", "name": ")" + n244 + "\"}") ==
        "spec.json: field 'name' makes a repository name (registry/name) of 259 characters: an "
        "image reference allows at most 255");
  CHECK(parse(R"({"registry": "localhost:5000", "name": ")" + std::string(240, 'c') + "\"}").name.size() == 240);
  CHECK(field_of(R"({"base_image": {"name": ")" + n256 + "\"}}") == "base_image.name");
}

TEST_CASE("spec: registry is lowercased and checked with flytekit's pattern") {
  CHECK(parse(R"({"registry": "localhost:30000"})").registry == "localhost:30000");
  CHECK(parse(R"({"registry": "GHCR.io/Org/Team"})").registry == "ghcr.io/org/team");
  CHECK(parse(R"({"registry": "registry.example:5000/a_b"})").registry ==
        "registry.example:5000/a_b");
  CHECK_FALSE(parse(R"({"registry": ""})").registry.has_value());
  const std::string msg =
      "spec.json: field 'registry' must be a registry like 'localhost:30000' "
      "or 'ghcr.io/org', not ";
  CHECK(error_of(R"({"registry": "ghcr.io//x"})") == msg + "'ghcr.io//x'");
  CHECK(error_of(R"({"registry": "https://ghcr.io"})") == msg + "'https://ghcr.io'");
  CHECK(error_of(R"({"registry": "host:123456"})") == msg + "'host:123456'");
}

TEST_CASE("spec: platform must be os/arch[/variant]") {
  CHECK(parse(R"({"platform": "linux/arm64/v8"})").platform == "linux/arm64/v8");
  CHECK(parse(R"({"platform": "Linux/ARM64"})").platform == "linux/arm64");
  const std::string msg =
      "spec.json: field 'platform' must be os/arch[/variant] like 'linux/amd64' (or several, comma-separated: "
      "'linux/amd64,linux/arm64'), not ";
  CHECK(error_of(R"({"platform": "linux"})") == msg + "'linux'");
  CHECK(error_of(R"({"platform": "linux/amd64/v2/x"})") == msg + "'linux/amd64/v2/x'");
}

TEST_CASE("spec: platform may list several platforms, comma-separated, as flytekit and buildx take them") {
  const ImageSpec two = parse(R"({"platform": "linux/amd64,linux/arm64"})");
  CHECK(two.platform == "linux/amd64,linux/arm64");
  CHECK(two.multi_platform());
  CHECK(two.platforms() == std::vector<std::string>{"linux/amd64", "linux/arm64"});
  CHECK(two.canonical()["platform"] == "linux/amd64,linux/arm64");
  // Spaces around items and upper case are normalized away; the order is kept.
  const ImageSpec spaced = parse(R"({"platform": " Linux/ARM64/v8 ,\tlinux/amd64 "})");
  CHECK(spaced.platform == "linux/arm64/v8,linux/amd64");
  CHECK(spaced.platforms() == std::vector<std::string>{"linux/arm64/v8", "linux/amd64"});
  CHECK_FALSE(parse(R"({"platform": "linux/arm64"})").multi_platform());
  CHECK(parse(R"({"platform": "linux/arm64"})").platforms() == std::vector<std::string>{"linux/arm64"});

  CHECK(error_of(R"({"platform": "linux/amd64,linux/amd64"})") ==
        "spec.json: field 'platform' lists linux/amd64 twice ('linux/amd64,linux/amd64')");
  CHECK(error_of(R"({"platform": "linux/amd64,"})") ==
        "spec.json: field 'platform' lists an empty platform ('linux/amd64,'): separate os/arch[/variant] items "
        "with one comma");
  CHECK(error_of(R"({"platform": "linux/amd64,arm64"})") ==
        "spec.json: field 'platform' must be os/arch[/variant] like 'linux/amd64' (or several, comma-separated: "
        "'linux/amd64,linux/arm64'), not 'arm64'");
  std::string seventeen;
  for (int i = 0; i < 17; ++i) seventeen += (i ? ",linux/a" : "linux/a") + std::to_string(i);
  CHECK(error_of(R"({"platform": ")" + seventeen + "\"}") ==
        "spec.json: field 'platform' lists 17 platforms; at most 16");

  // A nested base spec takes its parent's platform, for each platform.
  const ImageSpec nested = parse(R"({"platform": "linux/amd64,linux/arm64", "base_image": {"name": "b"}})");
  const ImageSpec arm = kiln::spec::with_platform(nested, "linux/arm64");
  CHECK(arm.platform == "linux/arm64");
  CHECK(arm.base_image.spec->platform == "linux/arm64");
  CHECK(nested.base_image.spec->platform == "linux/amd64");  // the original is unchanged
}

TEST_CASE("spec: user is user[:group], names or ids up to 2^32-2") {
  for (const char* ok : {"1000", "1000:1000", "0", "0:0", "4294967294", "4294967294:4294967294",
                         "flyte", "flyte:flyte", "flyte:1000", "1000:flyte", "user.name-1_x",
                         "00001000"})
    CHECK(parse(std::string(R"({"user": ")") + ok + "\"}").user == std::string(ok));
  CHECK_FALSE(parse(R"({"user": ""})").user.has_value());
  const std::string msg =
      "spec.json: field 'user' must be user[:group], each a name or a numeric id from 0 to "
      "4294967294, not ";
  CHECK(error_of(R"({"user": "1000:"})") == msg + "'1000:': the group is empty");
  CHECK(error_of(R"({"user": ":5"})") == msg + "':5': the user is empty");
  CHECK(error_of(R"({"user": " 1000"})") == msg + "' 1000': the user has a space or a control character");
  CHECK(error_of(R"({"user": "-1"})") == msg + "'-1': the user starts with '-'");
  CHECK(error_of(R"({"user": "1000:99999999999"})") ==
        msg + "'1000:99999999999': the group id is out of range");
  CHECK(error_of(R"({"user": "4294967295"})") == msg + "'4294967295': the user id is out of range");
  CHECK(error_of(R"({"user": "a:b:c"})") == msg + "'a:b:c': more than one ':'");
  CHECK(field_of(R"({"user": "1000\t"})") == "user");
  CHECK(field_of(R"({"user": "+5"})") == "user");
  CHECK(field_of(R"({"user": "99999999999999999999999999"})") == "user");
  CHECK(field_of(R"({"base_image": {"user": "1000:"}})") == "base_image.user");
}

TEST_CASE("spec: numeric_owner reads user as the validation does") {
  using kiln::spec::numeric_owner;
  using Owner = std::pair<std::uint32_t, std::uint32_t>;
  CHECK(numeric_owner("1000") == Owner{1000, 1000});
  CHECK(numeric_owner("1000:2000") == Owner{1000, 2000});
  CHECK(numeric_owner("0") == Owner{0, 0});
  // Ten digits are an id, not a name: every id up to 2^32-2.
  CHECK(numeric_owner("1234567890") == Owner{1234567890, 1234567890});
  CHECK(numeric_owner("4294967294") == Owner{4294967294u, 4294967294u});
  CHECK(numeric_owner("4294967294:1234567890") == Owner{4294967294u, 1234567890});
  CHECK(numeric_owner("00001000") == Owner{1000, 1000});
  CHECK(numeric_owner("000000000001000:0000000000002") == Owner{1000, 2});
  // A name anywhere: root keeps the files (kiln does not read /etc/passwd).
  CHECK(numeric_owner("flyte") == std::nullopt);
  CHECK(numeric_owner("flyte:1000") == std::nullopt);
  CHECK(numeric_owner("1000:flyte") == std::nullopt);
  // What the validation refuses, numeric_owner refuses: (uid_t)-1 is not a uid.
  for (const char* bad : {"4294967295", "4294967296", "1000:4294967295", "99999999999999999999999999", "1000:",
                          ":5", "-1", "a:b:c"}) {
    INFO(bad);
    CHECK(error_of(std::string(R"({"user": ")") + bad + "\"}") != "no error");
    CHECK_THROWS_AS(numeric_owner(bad), SpecError);
  }
  try {
    numeric_owner("4294967295");
  } catch (const SpecError& e) {
    CHECK(e.field() == "user");
    CHECK(std::string(e.what()) ==
          "field 'user' must be user[:group], each a name or a numeric id from 0 to 4294967294, not "
          "'4294967295': the user id is out of range");
  }
  // And what it accepts, numeric_owner takes.
  for (const char* ok : {"1000", "1000:1000", "4294967294", "flyte", "flyte:1000", "user.name-1_x", "00001000"}) {
    INFO(ok);
    CHECK(parse(std::string(R"({"user": ")") + ok + "\"}").user == std::string(ok));
    CHECK_NOTHROW(numeric_owner(ok));
  }
}

TEST_CASE("spec: compression_level is within its codec's range") {
  CHECK(error_of(R"({"compression_level": 10})") ==
        "spec.json: field 'compression_level' must be 1-9 for gzip (the default compression), not 10");
  CHECK(error_of(R"({"compression": "gzip", "compression_level": 19})") ==
        "spec.json: field 'compression_level' must be 1-9 for gzip, not 19");
  CHECK(error_of(R"({"compression": "zstd", "compression_level": 20})") ==
        "spec.json: field 'compression_level' must be 1-9 for gzip, 1-19 for zstd, not 20");
  CHECK(error_of(R"({"compression_level": 0})") ==
        "spec.json: field 'compression_level' must be at least 1, not 0");
  CHECK(field_of(R"({"base_image": {"compression_level": 12}})") == "base_image.compression_level");
  CHECK(field_of(R"({"base_image": {"compression_level": 99}})") == "base_image.compression_level");
  CHECK(parse(R"({"compression_level": 9})").compression_level == 9);
  CHECK(parse(R"({"compression_level": 1, "compression": "GZIP"})").compression_level == 1);
  CHECK(parse(R"({"compression": "zstd", "compression_level": 19})").compression_level == 19);
  CHECK(parse(R"({"compression": "none", "compression_level": 12})").compression_level == 12);
}

TEST_CASE("spec: compression is gzip, zstd or none") {
  CHECK(parse(R"({"compression": "zstd"})").compression == Compression::Zstd);
  CHECK(parse(R"({"compression": "NONE"})").compression == Compression::None);
  CHECK(parse(R"({"compression": "gzip"})").compression == Compression::Gzip);
  CHECK(error_of(R"({"compression": "lz4"})") ==
        "spec.json: field 'compression' must be one of \"gzip\", \"zstd\", \"none\", not \"lz4\"");
  CHECK(field_of(R"({"compression": "lz4"})") == "compression");
}

TEST_CASE("spec: source_copy_mode is case-insensitive") {
  CHECK(parse(R"({"source_root": ".", "source_copy_mode": "all"})").source_copy_mode == CopyMode::All);
  CHECK(parse(R"({"source_root": ".", "source_copy_mode": "NO_COPY"})").source_copy_mode == CopyMode::NoCopy);
  CHECK(parse(R"({"source_root": ".", "source_copy_mode": "Loaded_Modules"})").source_copy_mode ==
        CopyMode::LoadedModules);
  CHECK(parse(R"({"source_root": ".", "source_copy_mode": "CopyFileDetection.ALL"})").source_copy_mode ==
        CopyMode::All);
  CHECK(error_of(R"({"source_copy_mode": "auto"})") ==
        "spec.json: field 'source_copy_mode' must be one of \"loaded_modules\", \"all\", "
        "\"no_copy\", not \"auto\"");
}

TEST_CASE("spec: source_copy_mode other than no_copy needs source_root, as in flytekit") {
  // flytekit's ImageSpec.tag: "Field source_root for image spec NAME must be set when copy is set".
  const std::string msg =
      " but source_root is not set (flytekit: source_root must be set when copy is set); set "
      "source_root, or use \"no_copy\"";
  CHECK(error_of(R"({"source_copy_mode": "all"})") ==
        "spec.json: field 'source_copy_mode' is \"all\"" + msg);
  CHECK(error_of(R"({"source_copy_mode": "loaded_modules", "source_root": ""})") ==
        "spec.json: field 'source_copy_mode' is \"loaded_modules\"" + msg);
  CHECK(field_of(R"({"base_image": {"source_copy_mode": "ALL"}})") == "base_image.source_copy_mode");
  CHECK(field_of(R"({"source_copy_mode": "all", "copy": ["a"]})") == "source_copy_mode");
  // no_copy without source_root, and null, are accepted (flytekit accepts them too).
  CHECK(parse(R"({"source_copy_mode": "no_copy"})").source_copy_mode == CopyMode::NoCopy);
  CHECK_FALSE(parse(R"({"source_copy_mode": null})").source_root.has_value());
  CHECK(parse(R"({"source_copy_mode": "all", "source_root": "."})").source_copy_mode == CopyMode::All);
}

TEST_CASE("spec: copy entries are relative, normalized, and stay below the spec directory") {
  ImageSpec s = parse(R"({"copy": ["./a//b/", "c", "d/./e"]})");
  CHECK(s.copy == std::vector<std::string>{"a/b", "c", "d/e"});
  CHECK(parse(R"({"copy": "x/y/"})").copy == std::vector<std::string>{"x/y"});
  CHECK(error_of(R"({"copy": ["a/../b"]})") ==
        "spec.json: field 'copy' entry 'a/../b' must not contain '..'");
  CHECK(error_of(R"({"copy": [".."]})") ==
        "spec.json: field 'copy' entry '..' must not contain '..'");
  CHECK(error_of(R"({"copy": ["/etc/passwd"]})") ==
        "spec.json: field 'copy' entry '/etc/passwd' must be a relative path, not absolute");
  CHECK(error_of(R"({"copy": ["a", ""]})") == "spec.json: field 'copy' has an empty entry");
  // "." (or "./") is the directory itself, as flytekit accepts it (COPY . /root/./).
  CHECK(parse(R"({"copy": ["./", "."]})").copy == std::vector<std::string>{".", "."});
  CHECK(field_of(R"({"copy": ["/x"]})") == "copy");
}

TEST_CASE("spec: loaded_modules are relative paths and need source_root") {
  ImageSpec s = parse(R"({"source_root": ".", "loaded_modules": ["pkg//mod.py", "./a.py"]})");
  CHECK(s.loaded_modules == std::vector<std::string>{"pkg/mod.py", "a.py"});
  CHECK(error_of(R"({"source_root": ".", "loaded_modules": ["../x.py"]})") ==
        "spec.json: field 'loaded_modules' entry '../x.py' must not contain '..'");
  CHECK(error_of(R"({"source_root": ".", "loaded_modules": ["/x.py"]})") ==
        "spec.json: field 'loaded_modules' entry '/x.py' must be a relative path, not absolute");
  const std::string needs =
      "spec.json: field 'loaded_modules' needs source_root with source_copy_mode "
      "\"loaded_modules\"";
  CHECK(error_of(R"({"loaded_modules": ["a.py"]})") == needs);
  CHECK(
      error_of(R"({"source_root": ".", "source_copy_mode": "all", "loaded_modules": ["a.py"]})") ==
      needs);
}

TEST_CASE("spec: source_dest and workdir are absolute image paths, normalized") {
  ImageSpec s = parse(R"({"source_dest": "/app//src/", "workdir": "/w/./x/../y/"})");
  CHECK(s.source_dest == "/app/src");
  CHECK(s.workdir == "/w/y");
  CHECK(parse(R"({"workdir": "/"})").workdir == "/");
  CHECK(error_of(R"({"source_dest": "app"})") ==
        "spec.json: field 'source_dest' must be an absolute path in the image, not 'app'");
  CHECK(error_of(R"({"workdir": ""})") ==
        "spec.json: field 'workdir' must be an absolute path in the image, not ''");
}

// ---- Defaults and paths -------------------------------------------------------------------------

TEST_CASE("spec: defaults") {
  ImageSpec s = parse("{}");
  CHECK(s.name == "flytekit");
  CHECK(s.base_image.kind == BaseImage::Kind::Scratch);
  CHECK(s.base_image.ref == "scratch");
  CHECK(s.platform == "linux/amd64");
  CHECK(s.source_copy_mode == CopyMode::LoadedModules);
  CHECK(s.compression == Compression::Gzip);
  CHECK(s.large_file_threshold == 64ull * 1024 * 1024);
  CHECK(s.source_dest == "/root");
  CHECK_FALSE(s.source_root.has_value());
  CHECK_FALSE(s.workdir.has_value());
  CHECK_FALSE(s.source_date_epoch.has_value());
  CHECK_FALSE(s.registry.has_value());
  CHECK(s.builder_options.is_null());
  CHECK_FALSE(s.entrypoint.has_value());
  CHECK_FALSE(s.f_img_id.has_value());
  CHECK(s.base_dir == fs::path("/base"));
  CHECK(s.origin == "spec.json");
}

TEST_CASE("spec: null means absent for every field") {
  json all = json::object();
  for (const std::string& f : kiln::spec::known_fields()) all[f] = nullptr;
  ImageSpec s = parse(all.dump());
  CHECK(s.canonical() == parse("{}").canonical());
  CHECK(s.name == "flytekit");
}

TEST_CASE("spec: workdir defaults to source_dest when source_root is set") {
  CHECK(parse(R"({"source_root": "."})").workdir == "/root");
  CHECK(parse(R"({"source_root": ".", "source_dest": "/app"})").workdir == "/app");
  CHECK(parse(R"({"source_root": ".", "workdir": "/w"})").workdir == "/w");
}

TEST_CASE("spec: source_root and registry_config resolve against base_dir") {
  CHECK(parse(R"({"source_root": "src"})").source_root == fs::path("/base/src"));
  CHECK(parse(R"({"source_root": "."})").source_root == fs::path("/base"));
  CHECK(parse(R"({"source_root": "./a//b/"})").source_root == fs::path("/base/a/b"));
  CHECK(parse(R"({"source_root": "../other/./x"})").source_root == fs::path("/other/x"));
  CHECK(parse(R"({"source_root": "/abs/dir/"})").source_root == fs::path("/abs/dir"));
  CHECK(parse(R"({"registry_config": "auth.json"})").registry_config ==
        fs::path("/base/auth.json"));
  CHECK_FALSE(parse(R"({"source_root": ""})").source_root.has_value());
  // A base_dir with a trailing slash or dots is normalized first.
  CHECK(parse(R"({"source_root": "src"})", "/base/./x/../").source_root == fs::path("/base/src"));
}

TEST_CASE("spec: entrypoint takes a list") {
  CHECK(parse(R"({"entrypoint": ["/bin/sh"]})").entrypoint == std::vector<std::string>{"/bin/sh"});
  CHECK(parse(R"({"entrypoint": ["sh", "-c", "x"]})").entrypoint ==
        std::vector<std::string>{"sh", "-c", "x"});
}

TEST_CASE("spec: entrypoint [] clears the base's, absent keeps it") {
  ImageSpec cleared = parse(R"({"entrypoint": []})");
  REQUIRE(cleared.entrypoint.has_value());
  CHECK(cleared.entrypoint->empty());
  CHECK_FALSE(parse(R"({})").entrypoint.has_value());
  CHECK_FALSE(parse(R"({"entrypoint": null})").entrypoint.has_value());
  // Clearing shapes the config, so it is part of the canonical spec; absent is not.
  CHECK(cleared.canonical()["entrypoint"] == json::array());
  CHECK_FALSE(parse("{}").canonical().contains("entrypoint"));
}

TEST_CASE("spec: _F_IMG_ID is stored, and outside the canonical spec") {
  ImageSpec s = parse(R"({"_F_IMG_ID": "abc-123_x"})");
  CHECK(s.f_img_id == "abc-123_x");
  CHECK(s.canonical() == parse("{}").canonical());
  CHECK(parse(R"({"_F_IMG_ID": "other"})").canonical() == s.canonical());
  CHECK_FALSE(parse(R"({"_F_IMG_ID": ""})").f_img_id.has_value());
  CHECK(error_of(R"({"_F_IMG_ID": 5})") == "spec.json: field '_F_IMG_ID' must be a string, not a number");
}

TEST_CASE("spec: workdir defaults to source_dest when copy entries are baked") {
  CHECK(parse(R"({"copy": ["a"]})").workdir == "/root");
  CHECK(parse(R"({"copy": ["a"], "source_dest": "/app"})").workdir == "/app");
  CHECK_FALSE(parse(R"({})").workdir.has_value());
  CHECK(parse(R"({"copy": ["a"]})").bakes_files());
  CHECK(parse(R"({"source_root": "."})").bakes_files());
  CHECK_FALSE(parse(R"({"source_root": ".", "source_copy_mode": "no_copy"})").bakes_files());
  CHECK_FALSE(parse(R"({})").bakes_files());
}

TEST_CASE("spec: context_dir moves where relative paths resolve, first of all fields") {
  ImageSpec s = parse(R"({"source_root": "src", "copy": ["data"], "requirements": "req.txt",
                          "base_image": {"source_root": "lib", "base_image": "oci:l:t"},
                          "context_dir": "/work/project"})");
  CHECK(s.base_dir == fs::path("/work/project"));
  CHECK(s.source_root == fs::path("/work/project/src"));
  CHECK(s.base_image.spec->source_root == fs::path("/work/project/lib"));
  CHECK(s.base_image.spec->base_image.layout_dir == fs::path("/work/project/l"));
  // Relative to the spec's directory itself.
  CHECK(parse(R"({"context_dir": "../p", "source_root": "."})").source_root == fs::path("/p"));
  // Not content: where the files are is not part of the canonical spec.
  CHECK(s.canonical() == parse(R"({"source_root": "x", "copy": ["data"], "requirements": "r.txt",
                                   "base_image": {"source_root": "y", "base_image": "oci:/a/b:t"}})")
                             .canonical());
}

TEST_CASE("spec: kiln's own fields are stored") {
  ImageSpec s = parse(R"({"user": "1000:1000", "labels": {"a": "1"}, "annotations": {"b": "2"},
                          "env": {"PATH": "/bin"}, "large_file_threshold": 1024,
                          "source_date_epoch": 0, "builder": "kiln",
                          "tag_format": "{spec_hash}-dev"})");
  CHECK(s.user == "1000:1000");
  CHECK(s.labels == std::map<std::string, std::string>{{"a", "1"}});
  CHECK(s.annotations == std::map<std::string, std::string>{{"b", "2"}});
  CHECK(s.env == std::map<std::string, std::string>{{"PATH", "/bin"}});
  CHECK(s.large_file_threshold == 1024);
  CHECK(s.source_date_epoch == 0);
  CHECK(s.builder == "kiln");
  CHECK(s.tag_format == "{spec_hash}-dev");
}

// ---- Base images --------------------------------------------------------------------------------

TEST_CASE("spec: oci base images with and without a tag") {
  BaseImage a = parse(R"({"base_image": "oci:layout"})").base_image;
  CHECK(a.kind == BaseImage::Kind::OciLayout);
  CHECK(a.ref == "oci:layout");
  CHECK(a.layout_dir == fs::path("/base/layout"));
  CHECK(a.layout_tag == "");

  BaseImage b = parse(R"({"base_image": "oci:./out/layout/:v1.2"})").base_image;
  CHECK(b.kind == BaseImage::Kind::OciLayout);
  CHECK(b.layout_dir == fs::path("/base/out/layout"));
  CHECK(b.layout_tag == "v1.2");

  BaseImage c = parse(R"({"base_image": "oci:/srv/layouts/img:latest"})").base_image;
  CHECK(c.layout_dir == fs::path("/srv/layouts/img"));
  CHECK(c.layout_tag == "latest");

  // The last ':' is a tag separator only when no '/' follows it.
  BaseImage d = parse(R"({"base_image": "oci:a:b/c"})").base_image;
  CHECK(d.layout_dir == fs::path("/base/a:b/c"));
  CHECK(d.layout_tag == "");

  CHECK(error_of(R"({"base_image": "oci:dir:"})") ==
        "spec.json: field 'base_image' has an empty tag after ':' in 'oci:dir:'");
  CHECK(error_of(R"({"base_image": "oci::tag"})") ==
        "spec.json: field 'base_image' has no directory in 'oci::tag' (expected oci:DIR[:TAG])");
}

TEST_CASE("spec: scratch and empty base images") {
  CHECK(parse(R"({"base_image": "scratch"})").base_image.kind == BaseImage::Kind::Scratch);
  CHECK(parse(R"({"base_image": ""})").base_image.kind == BaseImage::Kind::Scratch);
}

TEST_CASE("spec: nested base spec is parsed recursively with the same base_dir") {
  ImageSpec s = parse(R"({"name": "top", "base_image": {
      "name": "Inner", "source_root": "lib", "copy": ["./x/"],
      "base_image": "oci:layouts/l:t"}})");
  REQUIRE(s.base_image.kind == BaseImage::Kind::Spec);
  REQUIRE(s.base_image.spec != nullptr);
  const ImageSpec& inner = *s.base_image.spec;
  CHECK(inner.name == "inner");
  CHECK(inner.source_root == fs::path("/base/lib"));
  CHECK(inner.copy == std::vector<std::string>{"x"});
  CHECK(inner.workdir == "/root");
  CHECK(inner.base_dir == fs::path("/base"));
  CHECK(inner.origin == "spec.json");
  CHECK(inner.base_image.kind == BaseImage::Kind::OciLayout);
  CHECK(inner.base_image.layout_dir == fs::path("/base/layouts/l"));
  CHECK(inner.base_image.layout_tag == "t");
}

// ---- Canonical form -----------------------------------------------------------------------------

TEST_CASE("spec: canonical applies defaults and drops empty and non-content fields") {
  CHECK(parse("{}").canonical().dump() ==
        R"({"base_image":"scratch","compression":"gzip","large_file_threshold":67108864,)"
        R"("platform":"linux/amd64","source_dest":"/root"})");
  ImageSpec s = parse(R"({
    "name": "app", "registry": "localhost:5000", "builder": "kiln", "tag_format": "{spec_hash}",
    "registry_config": "auth.json", "builder_options": {"a": 1},
    "source_root": "src", "source_copy_mode": "ALL", "env": {"B": "2", "A": "1"},
    "entrypoint": ["run"], "copy": ["z", "a"], "user": "1000", "labels": {"l": "v"},
    "annotations": {}, "compression": "zstd", "large_file_threshold": 100,
    "source_date_epoch": 5, "base_image": "oci:/x/y:v2", "platform": "linux/arm64"})");
  CHECK(s.canonical().dump() ==
        R"({"base_image":{"oci_layout_tag":"v2"},"compression":"zstd","copy":["a","z"],)"
        R"("entrypoint":["run"],"env":{"A":"1","B":"2"},"labels":{"l":"v"},)"
        R"("large_file_threshold":100,"platform":"linux/arm64","source_copy_mode":"all",)"
        R"("source_date_epoch":5,"source_dest":"/root","user":"1000",)"
        R"("workdir":"/root"})");
}

TEST_CASE("spec: canonical covers the fields that need RUN steps") {
  // Not parseable yet, but the hash must already cover them for when they are supported.
  ImageSpec s = parse("{}");
  s.python_version = "3.12";
  s.packages = {"numpy"};
  s.conda_packages = {"c"};
  s.conda_channels = {"ch"};
  s.requirements = "req.txt";
  s.apt_packages = {"git"};
  s.cuda = "12";
  s.cudnn = "8";
  s.commands = {"echo"};
  s.pip_index = "https://i";
  s.pip_extra_index_url = {"https://x"};
  s.pip_secret_mounts = {{"/s", "/t"}};
  s.pip_extra_args = {"--pre"};
  s.python_exec = "/py";
  s.runtime_packages = {"r"};
  s.base_image.kind = BaseImage::Kind::Registry;
  s.base_image.ref = "python:3.12";
  CHECK(s.canonical().dump() ==
        R"({"apt_packages":["git"],"base_image":"python:3.12","commands":["echo"],)"
        R"("compression":"gzip","conda_channels":["ch"],"conda_packages":["c"],"cuda":"12",)"
        R"("cudnn":"8","large_file_threshold":67108864,"packages":["numpy"],)"
        R"("pip_extra_args":["--pre"],"pip_extra_index_url":["https://x"],)"
        R"("pip_index":"https://i","pip_secret_mounts":["/t"],"platform":"linux/amd64",)"
        R"("python_exec":"/py","python_version":"3.12","requirements":true,)"
        R"("runtime_packages":["r"],"source_dest":"/root"})");
}

TEST_CASE("spec: canonical pip_extra_args hold URLs without credentials; the spec keeps them") {
  auto with_token = [](const std::string& token) {
    return parse(R"({"pip_extra_args": "--index-url https://u:)" + token +
                 R"(@pypi.example/x --extra-index-url=https://)" + token +
                 R"(@h2.example/simple --pre"})");
  };
  ImageSpec a = with_token("SECRET1"), b = with_token("SECRET2");
  // The RUN step gets the real value.
  CHECK(a.pip_extra_args == std::vector<std::string>{"--index-url", "https://u:SECRET1@pypi.example/x",
                                                     "--extra-index-url=https://SECRET1@h2.example/simple",
                                                     "--pre"});
  // The canonical spec (the tag, `kiln history --json`, `kiln show --json`) has no secret.
  const std::string dump = a.canonical().dump();
  CHECK(dump.find("SECRET") == std::string::npos);
  CHECK(a.canonical()["pip_extra_args"] ==
        json{"--index-url", "https://pypi.example/x", "--extra-index-url=https://h2.example/simple", "--pre"});
  // Rotating the token keeps the tag.
  CHECK(a.canonical() == b.canonical());
  CHECK(kiln::spec::spec_hash(a, "scratch", {}) == kiln::spec::spec_hash(b, "scratch", {}));
  // Without credentials nothing changes (so such specs keep their tags).
  ImageSpec plain = parse(R"({"pip_extra_args": ["--index-url", "https://pypi.example/x",
                                                  "--extra-index-url=https://h2.example/simple", "--pre"]})");
  CHECK(plain.canonical()["pip_extra_args"] == json(plain.pip_extra_args));
  CHECK(kiln::spec::spec_hash(plain, "scratch", {}) == kiln::spec::spec_hash(a, "scratch", {}));
}

TEST_CASE("spec: canonical keys are sorted") {
  ImageSpec s = parse(R"({"workdir": "/w", "user": "u", "copy": ["a"], "source_root": "."})");
  json c = s.canonical();
  std::vector<std::string> keys;
  for (const auto& item : c.items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"base_image", "compression", "copy",
                                         "large_file_threshold", "platform", "source_copy_mode",
                                         "source_dest", "user", "workdir"});
  CHECK(std::is_sorted(keys.begin(), keys.end()));
  CHECK_FALSE(c.contains("source_root"));
}

TEST_CASE("spec: canonical is independent of where the spec lives") {
  const std::string text = R"({"source_root": "../src", "copy": ["data"],
      "base_image": {"source_root": "lib", "base_image": "oci:layout:v1"}})";
  json a = parse(text, "/home/alice/repo/specs").canonical();
  json b = parse(text, "/tmp/ci/checkout/specs").canonical();
  CHECK(a == b);
  CHECK_FALSE(a.contains("source_root"));
  CHECK(a["source_copy_mode"] == "loaded_modules");
  CHECK(a["base_image"]["source_copy_mode"] == "loaded_modules");
  CHECK(a["base_image"]["base_image"] == json{{"oci_layout_tag", "v1"}});
  // Absolute paths in a spec written to a temporary directory (as pyflyte does) give the same.
  json c = parse(R"({"source_root": "/home/alice/repo/src", "copy": ["data"],
      "base_image": {"source_root": "/home/alice/repo/specs/lib",
                     "base_image": "oci:/home/alice/repo/specs/layout:v1"}})",
                 "/tmp/pyflyte-123").canonical();
  CHECK(c == a);
  // Requirements and secret sources are host paths too: their content counts, not where they are.
  CHECK(parse(R"({"requirements": "/a/req.txt", "pip_secret_mounts": [["/a/s", "/t"]]})").canonical() ==
        parse(R"({"requirements": "b/requirements.txt", "pip_secret_mounts": [["s2", "/t"]]})").canonical());
  CHECK(parse(R"({"pip_secret_mounts": [["/a/s", "/t"]]})").canonical() !=
        parse(R"({"pip_secret_mounts": [["/a/s", "/u"]]})").canonical());
}

TEST_CASE("spec: canonical changes with content fields only") {
  const json base =
      parse(R"({"name": "a", "registry": "localhost:5000", "env": {"A": "1"}})").canonical();
  // Not content: name, registry, builder, tag_format, registry_config, builder_options.
  CHECK(parse(R"({"name": "b", "registry": "ghcr.io/x", "env": {"A": "1"}, "builder": "k",
                  "tag_format": "t", "registry_config": "/c.json", "builder_config": [1]})")
            .canonical() == base);
  // Content.
  CHECK(parse(R"({"env": {"A": "2"}})").canonical() != base);
  CHECK(parse(R"({"env": {"A": "1"}, "user": "x"})").canonical() != base);
  CHECK(parse(R"({"env": {"A": "1"}, "compression": "none"})").canonical() != base);
  CHECK(parse(R"({"env": {"A": "1"}, "source_dest": "/app"})").canonical() != base);
  CHECK(parse(R"({"env": {"A": "1"}, "copy": "f"})").canonical() != base);
  CHECK(parse(R"({"env": {"A": "1"}, "base_image": "oci:l"})").canonical() != base);
  // source_copy_mode counts only with a source_root (no_copy alone is accepted, and shapes nothing).
  CHECK(parse(R"({"env": {"A": "1"}, "source_copy_mode": "no_copy"})").canonical() == base);
  CHECK(parse(R"({"source_root": ".", "source_copy_mode": "all"})").canonical() !=
        parse(R"({"source_root": ".", "source_copy_mode": "no_copy"})").canonical());
}

// ---- Files, stdin, small helpers ----------------------------------------------------------------

TEST_CASE("spec: load_spec reads a file and resolves paths against its directory") {
  TempDir tmp;
  write_file(tmp.path / "proj/specs/image.json", R"({"source_root": "..", "copy": "a"})");
  std::string path = (tmp.path / "proj/specs/image.json").string();
  ImageSpec s = kiln::spec::load_spec(path);
  CHECK(s.origin == path);
  CHECK(s.base_dir == tmp.path / "proj/specs");
  CHECK(s.source_root == tmp.path / "proj");
  CHECK_FALSE(s.canonical().contains("source_root"));  // tag v2: no path in the canonical spec
  CHECK(s.canonical().dump().find(tmp.path.string()) == std::string::npos);
}

TEST_CASE("spec: load_spec errors name the path") {
  TempDir tmp;
  std::string missing = (tmp.path / "nope.json").string();
  try {
    kiln::spec::load_spec(missing);
    FAIL("no error");
  } catch (const SpecError& e) {
    CHECK(std::string(e.what()) ==
          "cannot read spec file '" + missing + "': No such file or directory");
  }
  try {
    kiln::spec::load_spec(tmp.path.string());
    FAIL("no error");
  } catch (const SpecError& e) {
    CHECK(std::string(e.what()) ==
          "cannot read spec file '" + tmp.path.string() + "': it is a directory");
  }
  write_file(tmp.path / "bad.json", "{\n  \"env\": {\n    \"A\": 1,\n}");
  std::string bad = (tmp.path / "bad.json").string();
  try {
    kiln::spec::load_spec(bad);
    FAIL("no error");
  } catch (const SpecError& e) {
    CHECK(std::string(e.what()) ==
          bad +
              ":4:1: JSON syntax error while parsing object key: unexpected '}'; expected "
              "string literal");
  }
}

TEST_CASE("spec: known_fields is sorted and complete") {
  const auto& fields = kiln::spec::known_fields();
  CHECK(std::is_sorted(fields.begin(), fields.end()));
  CHECK(fields.size() == 42);
  for (const char* f : {"name", "builder_config", "builder_options", "runtime_packages", "workdir",
                        "loaded_modules", "source_date_epoch", "large_file_threshold", "modelcar",
                        "_F_IMG_ID", "context_dir"}) {
    INFO(f);
    CHECK(std::count(fields.begin(), fields.end(), f) == 1);
  }
}

TEST_CASE("spec: to_string") {
  CHECK(std::string(to_string(CopyMode::LoadedModules)) == "loaded_modules");
  CHECK(std::string(to_string(CopyMode::All)) == "all");
  CHECK(std::string(to_string(CopyMode::NoCopy)) == "no_copy");
  CHECK(std::string(to_string(Compression::Gzip)) == "gzip");
  CHECK(std::string(to_string(Compression::Zstd)) == "zstd");
  CHECK(std::string(to_string(Compression::None)) == "none");
}

// ---- Hostile specs: clear errors, never a crash (issue 12 §5) -----------------------------------

namespace {
/// {"base_image": {"base_image": ... {} ...}} nested `depth` deep.
std::string nested_bases(int depth) {
  std::string text;
  for (int i = 0; i < depth; ++i) text += "{\"base_image\": ";
  text += "{}";
  for (int i = 0; i < depth; ++i) text += "}";
  return text;
}
}  // namespace

TEST_CASE("spec: nested base_image specs have a depth limit", "[hostile]") {
  // 32 nested specs are fine; the 33rd is refused with the path of the field.
  ImageSpec ok = parse(nested_bases(kiln::spec::kMaxBaseImageDepth));
  int depth = 0;
  for (const ImageSpec* s = &ok; s->base_image.kind == BaseImage::Kind::Spec; s = s->base_image.spec.get()) ++depth;
  CHECK(depth == kiln::spec::kMaxBaseImageDepth);
  std::string err = error_of(nested_bases(kiln::spec::kMaxBaseImageDepth + 1));
  CHECK_THAT(err, Catch::Contains("nests base_image specs more than 32 deep"));
  CHECK_THAT(err, Catch::StartsWith("spec.json: field 'base_image.base_image."));
  // 10,000 deep (which overflowed the stack) stops at the JSON depth limit, with a position.
  CHECK(error_of(nested_bases(10000)) == "spec.json:1:1921: JSON nested more than 128 levels deep");
  // Deep arrays anywhere, even inside strings' neighbours, are measured outside strings only.
  CHECK(error_of("{\"builder_options\": " + std::string(200000, '[') + "}") ==
        "spec.json:1:148: JSON nested more than 128 levels deep");
  CHECK(parse("{\"env\": {\"A\": \"" + std::string(5000, '[') + "\\\"\"}}").env.at("A").size() == 5001);
}

TEST_CASE("spec: a huge apt package name is refused quickly, without a regex", "[hostile]") {
  const std::string huge(50000, 'a');
  std::string err = error_of(R"({"apt_packages": [")" + huge + R"("]})");
  CHECK_THAT(err, Catch::StartsWith("spec.json: field 'apt_packages' has 'aaaa"));
  CHECK_THAT(err, Catch::Contains("(50000 characters)"));
  CHECK(err.size() < 400);
  // Long runs of the other character classes, each of which used to recurse per character.
  for (const std::string& p : {"a" + std::string(50000, '+'), "a:" + std::string(50000, '-'),
                               "a=" + std::string(50000, '1'), "a/" + std::string(50000, '.')}) {
    CHECK_FALSE(kiln::spec::valid_apt_package(p));
  }
  CHECK(field_of(R"({"python_version": ")" + std::string(50000, '3') + R"("})") == "python_version");
}

TEST_CASE("spec: apt package names follow Debian's shape", "[hostile]") {
  using kiln::spec::valid_apt_package;
  for (const char* good : {"git", "libc6:amd64", "curl=7.88.1-10", "gcc/bookworm-backports", "g++", "0ad",
                           "python3.11", "libfoo:i386=1:2.3~rc1+b2", "x/stable-security"})
    CHECK(valid_apt_package(good));
  for (const char* bad : {"", "Git", "-x", "+a", "git;rm", "a b", "a:", "a=", "a/", "a:AMD64", "a/Stable", "a=1/x",
                          "a/x=1", "a::b", "ä"})
    CHECK_FALSE(valid_apt_package(bad));
  CHECK(valid_apt_package(std::string(256, 'a')));
  CHECK_FALSE(valid_apt_package(std::string(257, 'a')));
}

TEST_CASE("spec: python_version is one to three runs of digits", "[hostile]") {
  for (const char* good : {"3", "3.11", "3.11.4", "10.0"}) CHECK(parse(std::string(R"({"python_version": ")") + good + "\"}").python_version == good);
  for (const char* bad : {"3.", ".3", "3..1", "3.11.4.1", "3a", "v3", " 3", "3.11 "})
    CHECK(field_of(std::string(R"({"python_version": ")") + bad + "\"}") == "python_version");
}

TEST_CASE("spec: a JSON number out of range is a spec error with line and column", "[hostile]") {
  CHECK(error_of("{\n  \"source_date_epoch\": 1e999\n}") ==
        "spec.json:2:24: JSON number 1e999 is out of range (it does not fit a 64-bit float)");
  CHECK(field_of("{\"source_date_epoch\": 1e999}") == "");
  CHECK(error_of(R"({"builder_options": [1, -2e400]})") ==
        "spec.json:1:25: JSON number -2e400 is out of range (it does not fit a 64-bit float)");
  // Large integers that fit a double are a type or range error of the field, not a crash.
  CHECK(error_of(R"({"source_date_epoch": 99999999999999999999999})") ==
        "spec.json: field 'source_date_epoch' must be an integer, not a number");
}

TEST_CASE("spec: source_date_epoch must be within 0 ... 253402300799", "[hostile]") {
  CHECK(parse(R"({"source_date_epoch": 253402300799})").source_date_epoch == 253402300799);
  CHECK(parse(R"({"source_date_epoch": 0})").source_date_epoch == 0);
  CHECK(error_of(R"({"source_date_epoch": 253402300800})") ==
        "spec.json: field 'source_date_epoch' must be at most 253402300799 (9999-12-31T23:59:59Z), not 253402300800");
  CHECK(field_of(R"({"source_date_epoch": 9223372036854775807})") == "source_date_epoch");
  CHECK(field_of(R"({"base_image": {"source_date_epoch": 300000000000}})") == "base_image.source_date_epoch");
}
