/** The part of js-yaml's API the tests use (the package ships no types). */
declare module 'js-yaml' {
  export function load(text: string): unknown;
}
